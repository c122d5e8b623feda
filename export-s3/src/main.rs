//! `export-s3`: exporting to S3 is not built yet (issue 5). The
//! process runs on the shared exporter runtime so the system has its final
//! shape: it follows the streams with `s3_task_executor` exports, keeps their
//! messages, and shows in each export's status that nothing is exported yet.

use bus_schema::StreamDefinition;

fn exports(def: &StreamDefinition) -> Vec<bus_schema::ExportCommon> {
    def.exports
        .s3_task_executor
        .iter()
        .map(|c| c.common.clone())
        .collect()
}

fn main() -> std::process::ExitCode {
    export_runtime::run_process("export-s3", || async {
        Ok(export_runtime::NotBuilt {
            reason: "export to S3 is not built in this version yet (issue 5)",
            exports,
        })
    })
}
