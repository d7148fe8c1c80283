//! Models: the manifest that travels with every `.onnx` file, the preprocessing it
//! describes, and tract inference.

pub mod engine;
pub mod manifest;
pub mod pad;
pub mod pool;
pub mod preprocess;
pub mod qconv;
pub mod reduce;
