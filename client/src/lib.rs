//! Rossby's client SDK and the `rossby` CLI: device keys, end-to-end encryption,
//! local state and every API call. It never depends on a storage backend. Filled by
//! the client work; a placeholder until then.
