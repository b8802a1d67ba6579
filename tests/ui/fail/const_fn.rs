use dlock_runtime::distributed_lock;

#[distributed_lock(name = "job")]
const fn job() -> Option<()> {
    Some(())
}

fn main() {
    let _ = job();
}
