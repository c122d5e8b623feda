//! `export-analytics`: exporting to IoT Analytics is not built yet (issue 6). The
//! process runs on the shared exporter runtime so the system has its final
//! shape: it follows the streams with `iot_analytics` exports, keeps their
//! messages, and shows in each export's status that nothing is exported yet.

use bus_schema::StreamDefinition;

fn exports(def: &StreamDefinition) -> Vec<bus_schema::ExportCommon> {
    def.exports
        .iot_analytics
        .iter()
        .map(|c| c.common.clone())
        .collect()
}

fn main() -> std::process::ExitCode {
    export_runtime::run_process("export-analytics", || async {
        Ok(export_runtime::NotBuilt {
            reason: "export to IoT Analytics is not built in this version yet (issue 6)",
            exports,
        })
    })
}
