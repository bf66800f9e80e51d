//! QCOW2, the KVM world's format (see formats/qcow2.md).

pub mod writer;
