//! Compiles the stored-record schema with prost, using protox so no system `protoc`
//! is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/records.proto");
    let descriptors = protox::compile(["proto/records.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
