//! `falcon openapi`: print the OpenAPI 3.1 document a worker serves at `/openapi.json`,
//! without starting one (for client generators, reviews and `docs/openapi.json`).

use std::process::ExitCode;

pub fn run() -> ExitCode {
    match falcon_server::http::openapi_document().to_pretty_json() {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write the OpenAPI document: {e}");
            ExitCode::FAILURE
        }
    }
}
