use dlock_runtime::distributed_lock;

#[distributed_lock(timeout = 60)]
fn job() -> Option<()> {
    Some(())
}

fn main() {
    let _ = job();
}
