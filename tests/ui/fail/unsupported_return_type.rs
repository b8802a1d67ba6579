use dlock_runtime::distributed_lock;

#[distributed_lock(name = "job")]
fn job() -> u32 {
    1
}

fn main() {
    let _ = job();
}
