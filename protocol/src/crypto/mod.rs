//! Shared cryptographic formats (filled in next).
