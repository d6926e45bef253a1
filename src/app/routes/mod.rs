//! Handlers of the public router, one file per resource. The route table is in `app/mod.rs`.

pub(crate) mod events;
pub(crate) mod items;
pub(crate) mod root;
pub(crate) mod settings;
pub(crate) mod slow;
pub(crate) mod ws;
