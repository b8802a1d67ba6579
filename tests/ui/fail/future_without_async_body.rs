use dlock_runtime::distributed_lock;
use std::future::Future;

async fn work() -> Option<()> {
    Some(())
}

#[distributed_lock(name = "job")]
fn job() -> impl Future<Output = Option<()>> {
    println!("this line would run before the lock is taken");
    work()
}

fn main() {
    let _ = job();
}
