use dlock_runtime::distributed_lock;

#[distributed_lock(ttl = "forever")]
fn job() -> Option<()> {
    Some(())
}

fn main() {
    let _ = job();
}
