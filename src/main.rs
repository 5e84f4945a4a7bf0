fn main() {
    sonomask::logger::init(log::LevelFilter::Info);
    sonomask::heap::keep_freed_memory();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = sonomask::cli::main(&argv) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
