//! End-to-end tests of the whole system (real processes, real SDK clients,
//! local AWS endpoints) live here once ingest, supervisor and exporters exist.
//! The store's own black-box tests are in `store/tests`.
