//! Micro-benchmarks of usage accounting on the response path: the SSE usage parser over the golden
//! Anthropic stream, and pricing a finished request.

use std::hint::black_box;

use claude_relay::usage::TokenUsage;
use claude_relay::usage::pricing::PricingTable;
use claude_relay::usage::sse::SseUsageParser;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const STREAM: &[u8] = include_bytes!("../tests/fixtures/responses/anthropic-messages-stream.sse");

fn parse(chunk_size: usize) -> TokenUsage {
    let mut parser = SseUsageParser::new();
    for chunk in STREAM.chunks(chunk_size) {
        parser.feed(black_box(chunk));
    }
    parser.usage()
}

fn sse_usage(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_usage");
    group.throughput(Throughput::Bytes(STREAM.len() as u64));
    group.bench_function("golden_stream_64b_chunks", |b| b.iter(|| parse(64)));
    group.bench_function("golden_stream_whole", |b| b.iter(|| parse(STREAM.len())));
    group.finish();
}

fn pricing(c: &mut Criterion) {
    let Ok(table) = PricingTable::builtin() else {
        eprintln!("builtin pricing table does not load; skipping the pricing benches");
        return;
    };
    let usage = TokenUsage {
        input: 2_100,
        output: 730,
        cache_read: 48_000,
        cache_write_5m: 1_200,
        cache_write_1h: 0,
        reasoning: 0,
        billing: claude_relay::usage::Billing::NONE,
    };
    let mut group = c.benchmark_group("pricing");
    // Exact entry, and a name that resolves through normalisation.
    group.bench_function("cost_nanos_dated", |b| {
        b.iter(|| table.cost_nanos(black_box("claude-sonnet-4-5-20250929"), black_box(&usage)))
    });
    group.bench_function("cost_nanos_bedrock_1m", |b| {
        b.iter(|| {
            table.cost_nanos(
                black_box("bedrock/ca.anthropic.claude-sonnet-4-5-20250929-v1:0[1m]"),
                black_box(&usage),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, sse_usage, pricing);
criterion_main!(benches);
