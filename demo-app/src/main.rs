fn main() {
    eprintln!("demo-app: not built yet; see the README");
    std::process::exit(2);
}
