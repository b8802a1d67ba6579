use dlock_runtime::distributed_lock;

#[distributed_lock(name = "job", retries = "3")]
fn job() -> Option<()> {
    Some(())
}

fn main() {
    let _ = job();
}
