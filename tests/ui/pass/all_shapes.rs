//! Every supported shape compiles, with every option.
use dlock_runtime::{Error, distributed_lock};
use std::future::Future;
use std::pin::Pin;

#[derive(Debug)]
enum AppError {
    Lock(Error),
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Lock(e)
    }
}

#[distributed_lock(
    name = "deploy-{env}-{{literal}}",
    backend = "memory",
    timeout = "1m 30s",
    ttl = "45s",
    min_hold = "500ms",
    cancel_on_loss,
    crate = "dlock_runtime"
)]
async fn deploy(env: &str) -> Result<(), AppError> {
    let _ = env;
    Ok(())
}

#[distributed_lock(timeout = "0s")]
fn unit() {}

#[distributed_lock]
fn generic<T: std::fmt::Debug>(value: T) -> Option<String> {
    Some(format!("{value:?}"))
}

#[distributed_lock(name = "boxed")]
fn boxed() -> Pin<Box<dyn Future<Output = Option<u8>> + Send>> {
    Box::pin(async move { Some(1) })
}

struct S;

impl S {
    #[distributed_lock(name = "s-{n}")]
    async fn method(&self, n: u32) -> Option<u32> {
        Some(n)
    }

    #[distributed_lock(name = "borrowed")]
    fn borrowed(&self) -> Option<&'static str> {
        Some("x")
    }
}

fn main() {
    let _ = deploy("prod");
    unit();
    let _ = generic(1);
    let _ = boxed();
    let _ = S.method(1);
    let _ = S.borrowed();
    let _: Option<AppError> = None;
}
