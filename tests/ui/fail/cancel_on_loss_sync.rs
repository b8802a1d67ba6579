use dlock_runtime::distributed_lock;

#[distributed_lock(name = "job", cancel_on_loss)]
fn job() -> Option<()> {
    Some(())
}

fn main() {
    let _ = job();
}
