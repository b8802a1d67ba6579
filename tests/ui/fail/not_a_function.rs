use dlock_runtime::distributed_lock;

#[distributed_lock(name = "job")]
struct Job;

fn main() {}
