//! The client endpoint: speaks the Stream Manager SDKs' TCP protocol and
//! forwards every operation to the store over the bus. The only crate that
//! knows the SDK wire format; it knows nothing of storage or exporters.

pub mod config;
pub mod fast;
pub mod metrics;
pub mod process;
pub mod server;
pub mod submit;
pub mod wire;
