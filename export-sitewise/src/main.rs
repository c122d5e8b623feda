//! `export-sitewise`: exporting to IoT SiteWise is not built yet (issue 6). The
//! process runs on the shared exporter runtime so the system has its final
//! shape: it follows the streams with `iot_sitewise` exports, keeps their
//! messages, and shows in each export's status that nothing is exported yet.

use bus_schema::StreamDefinition;

fn exports(def: &StreamDefinition) -> Vec<bus_schema::ExportCommon> {
    def.exports
        .iot_sitewise
        .iter()
        .map(|c| c.common.clone())
        .collect()
}

fn main() -> std::process::ExitCode {
    export_runtime::run_process("export-sitewise", || async {
        Ok(export_runtime::NotBuilt {
            reason: "export to IoT SiteWise is not built in this version yet (issue 6)",
            exports,
        })
    })
}
