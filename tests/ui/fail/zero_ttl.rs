use dlock_runtime::distributed_lock;

#[distributed_lock(ttl = "0s")]
fn job() -> Option<()> {
    Some(())
}

fn main() {
    let _ = job();
}
