//! The broker core through its storage boundary: a `Broker` over a `LocalStore` in a temporary
//! directory, with the clock paused where time matters.

mod groups;
mod queues;
mod requests;
