//! End-to-end tests of the HTTP API: a real server on 127.0.0.1:0 over a temporary data
//! directory, used as a client would use it.

mod harness;
mod hostile;
mod publish;
mod push;
mod queues;
mod read;
mod requests;
mod service;
mod streams;
mod topics;
