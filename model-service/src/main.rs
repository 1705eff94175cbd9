//! `cartstream-model-service`: demand forecasts (issue 7, under construction).

fn main() {
    eprintln!("cartstream-model-service: not built yet");
    std::process::exit(2);
}
