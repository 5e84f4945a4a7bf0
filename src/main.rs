/// Tensors from a size-class pool, small blocks from glibc (src/heap.rs: why).
#[global_allocator]
static HEAP: sonomask::heap::KeptHeap = sonomask::heap::KeptHeap;

fn main() {
    sonomask::logger::init(log::LevelFilter::Info);
    sonomask::heap::keep_freed_memory();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = sonomask::cli::main(&argv) {
        if let Some(exit) = e.downcast_ref::<sonomask::cli::Exit>() {
            if !exit.message.is_empty() {
                eprintln!("{}", exit.message);
            }
            std::process::exit(exit.code);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
