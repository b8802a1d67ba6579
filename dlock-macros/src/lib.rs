//! The `#[distributed_lock]` attribute.
//!
//! Users depend on `dlock-runtime`, which re-exports this attribute and documents it with
//! runnable examples. This crate only parses the attribute, checks it against the function
//! signature, and emits calls into `dlock_runtime::__private`; no lock logic lives here.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod attr;
mod expand;

use proc_macro::TokenStream;

/// Runs the function body while holding a distributed lock.
///
/// See `dlock_runtime::distributed_lock` for the options and examples.
#[proc_macro_attribute]
pub fn distributed_lock(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::distributed_lock(args.into(), item.into()).into()
}
