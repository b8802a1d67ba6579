use dlock_runtime::distributed_lock;

#[derive(Debug)]
struct MyError;

#[distributed_lock(name = "job")]
async fn job() -> Result<(), MyError> {
    Ok(())
}

fn main() {
    let _ = job();
}
