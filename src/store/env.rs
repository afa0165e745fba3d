//! The environment store.
