use dlock_runtime::distributed_lock;

#[distributed_lock(name = "job")]
fn job() -> impl std::fmt::Display {
    1
}

fn main() {
    let _ = job();
}
