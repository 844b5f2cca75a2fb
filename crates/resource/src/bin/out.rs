fn main() -> std::process::ExitCode {
    dockhand_resource::main(dockhand_resource::Command::Out)
}
