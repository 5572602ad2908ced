//! What the tunnel module's unit tests share: a node's state and an actor that takes every
//! message a link or the hub sends and does nothing.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use actix::{Actor, Context, Handler};

use super::hub::{MoveAway, Revoked};
use super::open::StreamGone;

/// A node's state on a free port, for tables and tunnels built by hand.
pub fn state() -> Arc<crate::AppState> {
    let config = crate::config::Config::for_listen("127.0.0.1:0".parse().unwrap());
    Arc::new(crate::AppState::new(config).unwrap())
}

/// Takes what a link's actor would be told, and ignores it.
pub struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<StreamGone> for Sink {
    type Result = ();
    fn handle(&mut self, _: StreamGone, _: &mut Context<Self>) {}
}

impl Handler<Revoked> for Sink {
    type Result = ();
    fn handle(&mut self, _: Revoked, _: &mut Context<Self>) {}
}

impl Handler<MoveAway> for Sink {
    type Result = ();
    fn handle(&mut self, _: MoveAway, _: &mut Context<Self>) {}
}
