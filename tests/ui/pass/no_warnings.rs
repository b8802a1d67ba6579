//! The expansion triggers no lint in user code: one-expression bodies, `forever`, every shape
//! of return, under `deny(warnings)` and clippy's pedantic group.
#![deny(warnings)]
#![deny(clippy::pedantic)]

use dlock_runtime::distributed_lock;
use std::future::Future;

#[derive(Debug)]
struct AppError;

impl From<dlock_runtime::Error> for AppError {
    fn from(_: dlock_runtime::Error) -> Self {
        AppError
    }
}

fn side_effect() {}

#[distributed_lock(name = "call")]
async fn one_call() {
    side_effect()
}

#[distributed_lock(name = "ok")]
async fn one_ok() -> Result<(), AppError> {
    Ok(())
}

#[distributed_lock(name = "cancel", cancel_on_loss)]
async fn one_line_cancel() -> Result<u8, AppError> {
    Ok(1)
}

#[allow(clippy::manual_async_fn)]
#[distributed_lock(name = "future")]
fn one_line_future() -> impl Future<Output = Result<u8, AppError>> {
    async move { Ok(1) }
}

#[distributed_lock(name = "one-line")]
async fn one_line() -> Option<u32> {
    Some(1)
}

#[distributed_lock(name = "unit-async")]
async fn unit_async() {}

#[distributed_lock(name = "unit-sync")]
fn unit_sync() {}

#[distributed_lock(name = "forever", timeout = "forever")]
async fn waits_forever(n: u32) -> Option<u32> {
    Some(n)
}

#[distributed_lock(name = "sync-{n}")]
fn sync_one_line(n: u32) -> Option<u32> {
    Some(n)
}

fn main() {
    drop(one_call());
    drop(one_ok());
    drop(one_line_cancel());
    drop(one_line_future());
    drop(one_line());
    drop(unit_async());
    unit_sync();
    drop(waits_forever(1));
    let _ = sync_one_line(2);
}
