#include <prometheus/metric_family.h>
#include <pybind11/stl.h>

#include <map>

#include "bindings.hpp"

namespace driftgate::bindings {

namespace {

/// (name, help, type, [(sample name, labels, value)]), the shape prometheus_client's
/// Metric takes; histograms are spelled out as _bucket, _count and _sum samples.
py::list families_as_python(const std::vector<prometheus::MetricFamily>& families) {
    py::list out;
    for (const auto& family : families) {
        py::list samples;
        for (const auto& metric : family.metric) {
            py::dict labels;
            for (const auto& label : metric.label) labels[py::str(label.name)] = label.value;
            switch (family.type) {
                case prometheus::MetricType::Counter:
                    samples.append(py::make_tuple(family.name, labels, metric.counter.value));
                    break;
                case prometheus::MetricType::Gauge:
                    samples.append(py::make_tuple(family.name, labels, metric.gauge.value));
                    break;
                case prometheus::MetricType::Histogram: {
                    for (const auto& bucket : metric.histogram.bucket) {
                        py::dict with_le = labels.attr("copy")();
                        with_le["le"] = bucket.upper_bound;
                        samples.append(
                            py::make_tuple(family.name + "_bucket", with_le,
                                           static_cast<double>(bucket.cumulative_count)));
                    }
                    samples.append(
                        py::make_tuple(family.name + "_count", labels,
                                       static_cast<double>(metric.histogram.sample_count)));
                    samples.append(
                        py::make_tuple(family.name + "_sum", labels, metric.histogram.sample_sum));
                    break;
                }
                default:
                    samples.append(py::make_tuple(family.name, labels, metric.untyped.value));
            }
        }
        out.append(py::make_tuple(family.name, family.help, type_name(family.type), samples));
    }
    return out;
}

ExpositionFormat format_of(bool openmetrics) {
    return openmetrics ? ExpositionFormat::kOpenMetrics : ExpositionFormat::kText;
}

}  // namespace

void register_metrics(py::module_& m) {
    py::class_<MetricsRegistry, std::shared_ptr<MetricsRegistry>>(
        m, "MetricsRegistry", "A prometheus-cpp registry with Prometheus text exposition.")
        .def(py::init<>())
        .def(
            "exposition",
            [](const MetricsRegistry& registry, bool openmetrics) {
                py::gil_scoped_release release;
                return registry.exposition(format_of(openmetrics));
            },
            py::arg("openmetrics") = false,
            "Everything registered, in the Prometheus text format 0.0.4, or OpenMetrics 1.0.0 "
            "(ending in '# EOF') with openmetrics=True.")
        .def(
            "exposition_bytes",
            [](const MetricsRegistry& registry, bool openmetrics) {
                std::string text;
                {
                    py::gil_scoped_release release;
                    text = registry.exposition(format_of(openmetrics));
                }
                // UTF-8 as written: an HTTP body needs no str in between.
                return py::bytes(text);
            },
            py::arg("openmetrics") = false,
            "exposition() as UTF-8 bytes, ready to be an HTTP body.")
        .def("family_names", &MetricsRegistry::family_names,
             "The name of every family the registry can expose (counters with their _total).")
        .def(
            "collect",
            [](const MetricsRegistry& registry) {
                std::vector<prometheus::MetricFamily> families;
                {
                    py::gil_scoped_release release;
                    families = registry.collect();
                }
                return families_as_python(families);
            },
            "[(name, help, type, [(sample name, labels, value)])] for every family.")
        // For the few metrics kept in Python (the configuration reload's): set or count a
        // series in this registry, so it is exported with the rest. Not for hot paths: each
        // call looks the family and series up by name.
        .def(
            "set_gauge",
            [](MetricsRegistry& registry, const std::string& name, const std::string& help,
               double value, const std::map<std::string, std::string>& labels) {
                registry.gauge(MetricName{name.c_str(), help.c_str()}).Add(labels).Set(value);
            },
            py::arg("name"), py::arg("help"), py::arg("value"),
            py::arg("labels") = std::map<std::string, std::string>{},
            "Sets a gauge series, creating the family on first use. ValueError for a bad name "
            "or a name registered as another type.")
        .def(
            "increment_counter",
            [](MetricsRegistry& registry, const std::string& name, const std::string& help,
               const std::map<std::string, std::string>& labels, double amount) {
                if (!(amount >= 0)) {
                    throw py::value_error(
                        "amount=" + py::repr(py::float_(amount)).cast<std::string>() +
                        ": expected a number >= 0");
                }
                registry.counter(MetricName{name.c_str(), help.c_str()})
                    .Add(labels)
                    .Increment(amount);
            },
            py::arg("name"), py::arg("help"),
            py::arg("labels") = std::map<std::string, std::string>{}, py::arg("amount") = 1.0,
            "Adds `amount` to a counter series (0 creates it), creating the family on first use.");

    m.attr("ROLLOUT_LABEL") = metrics::kRolloutLabel;
    m.def("default_registry", &MetricsRegistry::default_registry,
          "The process-wide registry that components use when given none.");
}

}  // namespace driftgate::bindings
