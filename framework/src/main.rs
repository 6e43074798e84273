fn main() -> std::process::ExitCode {
    framework::cli::main()
}
