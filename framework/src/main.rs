/// mimalloc: the engine allocates and frees many short-lived buffers on two threads; glibc's
/// allocator spent about a tenth of a scale-1 run in its own bookkeeping.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    framework::cli::main()
}
