//! dockhand core
