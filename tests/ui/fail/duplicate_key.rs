use dlock_runtime::distributed_lock;

#[distributed_lock(name = "a", name = "b")]
fn job() -> Option<()> {
    Some(())
}

fn main() {
    let _ = job();
}
