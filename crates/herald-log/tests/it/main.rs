//! Integration tests of the partition log, one binary (see STYLE.md).

mod crash;
mod faults;
mod files;
mod kill;
mod limits;
mod model;
mod retention;
mod support;
mod tail;
