use dlock_runtime::distributed_lock;

#[distributed_lock(timeout = "sixty seconds")]
fn job() -> Option<()> {
    Some(())
}

fn main() {
    let _ = job();
}
