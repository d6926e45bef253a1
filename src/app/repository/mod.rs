//! Data access, one file per table: the handlers call these and never hold SQL. Each method
//! takes a connection from the pools it was given (those in force when the request began),
//! and returns [`AppError`](super::AppError): a repository knows what a database error means
//! for its records (a name taken is a conflict, a row missing is `None`).

mod items;

pub(crate) use items::{Item, Items};
