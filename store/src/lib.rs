//! The storage process: the only process that opens the fjall database.
//!
//! `engine` stores streams; `server` serves the engine on the bus; `validate`
//! holds the definition rules; `keys` the on-disk layout; `wal` the
//! write-ahead log in front of fjall and the thread that applies it. Nothing here knows
//! the SDK wire format or any AWS destination.

pub mod bandwidth;
pub mod config;
pub mod engine;
pub mod keys;
pub mod ledger;
pub mod load;
pub mod priority;
pub mod process;
pub mod server;
pub mod slots;
pub mod validate;
pub mod waiters;
pub mod wal;
