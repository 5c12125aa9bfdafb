#include <catch2/catch.hpp>

#include <memory>
#include <string>

#include "driftgate/signature_lru.hpp"

using driftgate::DeterminismProbe;
using driftgate::MetricsRegistry;

TEST_CASE("the same input with the same signature is consistent", "[determinism_probe]") {
    DeterminismProbe probe(10, std::make_shared<MetricsRegistry>());
    CHECK(probe.observe("input-1", "sig-a"));
    CHECK(probe.observe("input-1", "sig-a"));
    CHECK(probe.observe("input-2", "sig-b"));
}

TEST_CASE("a changed signature is a mismatch, counted", "[determinism_probe][metrics]") {
    auto registry = std::make_shared<MetricsRegistry>();
    DeterminismProbe probe(10, registry);
    probe.observe("input-1", "sig-a");
    CHECK_FALSE(probe.observe("input-1", "sig-b"));
    CHECK_FALSE(probe.observe("input-1", "sig-b"));  // the first signature stays the reference
    CHECK(probe.observe("input-1", "sig-a"));
    CHECK_THAT(registry->exposition(), Catch::Contains("solver_signature_mismatch_total 2"));
}

TEST_CASE("forgotten inputs start over", "[determinism_probe]") {
    DeterminismProbe probe(1, std::make_shared<MetricsRegistry>());
    probe.observe("input-1", "sig-a");
    probe.observe("input-2", "sig-b");  // evicts input-1
    CHECK(probe.observe("input-1", "sig-c"));
    CHECK(probe.size() == 1);
}
