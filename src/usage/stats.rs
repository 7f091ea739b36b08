//! Statistics aggregation and the batch writer.
