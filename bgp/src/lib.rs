pub mod codec;
pub mod pack;
