use dlock_runtime::distributed_lock;

#[distributed_lock(name = "line\nbreak")]
fn job() -> Option<()> {
    Some(())
}

fn main() {
    let _ = job();
}
