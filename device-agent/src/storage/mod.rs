//! Durable storage: the shared storage worker ([`worker`]) and the cabinet's key layout with its
//! synchronous operations ([`store`]).

pub mod store;
pub mod worker;

pub use store::{
    ack, acked, append, append_many, claim_command, command_record, config_overrides,
    config_overrides_write, creds_write, finished_result, forget_oldest_commands, load, lock_write,
    read, read_all, write,
};
pub use store::{
    alarm_key, command_key, outbox_key, AlarmKey, CommandRecord, Entry, Loaded, StoredEvent, Write,
};
pub use worker::{Durability, Storage, StorageError};
