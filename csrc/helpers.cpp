// megamix._helpers: index builders for the data pipeline (numpy in, numpy out).
//
// build_sample_idx        packs an epoch's documents into windows of seq_length (+1) tokens.
// build_blending_indices  assigns global samples of one mixture segment to domains.
//
// Both functions are pure: they validate their inputs (raising ValueError / IndexError
// with a message that names the argument), release the GIL for the loops, and return
// freshly allocated numpy arrays. Plain-numpy references of the same algorithms live in
// megamix/data/helpers.py and the tests compare the two.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

void require_1d(const py::buffer_info &info, const char *name) {
  if (info.ndim != 1) {
    throw py::value_error(std::string(name) + " must be one-dimensional, got " +
                          std::to_string(info.ndim) + " dimensions");
  }
}

// Token count of every document in epoch order; checks ids and sizes on the way.
template <typename Idx>
std::vector<int64_t> epoch_doc_lengths(const int32_t *sizes, int64_t num_sizes, const Idx *doc_idx,
                                       int64_t num_docs) {
  std::vector<int64_t> lengths(static_cast<size_t>(num_docs));
  for (int64_t j = 0; j < num_docs; ++j) {
    const int64_t doc = static_cast<int64_t>(doc_idx[j]);
    if (doc < 0 || doc >= num_sizes) {
      throw py::index_error("doc_idx[" + std::to_string(j) + "] = " + std::to_string(doc) +
                            " is outside sizes (length " + std::to_string(num_sizes) + ")");
    }
    if (sizes[doc] < 0) {
      throw py::value_error("sizes[" + std::to_string(doc) + "] = " + std::to_string(sizes[doc]) +
                            " is negative; expected token counts >= 0");
    }
    lengths[static_cast<size_t>(j)] = sizes[doc];
  }
  return lengths;
}

// Row i holds (position in doc_idx, offset) of stream token i * seq_length; for the windows
// with an extra token that is the document containing the token, otherwise the first
// document whose end reaches it (so a window ending on a boundary reads up to that end).
void fill_sample_idx(const std::vector<int64_t> &lengths, int64_t seq_length, int64_t extra,
                     int64_t num_samples, int64_t *out) {
  out[0] = 0;
  out[1] = 0;
  int64_t j = 0;           // position in doc_idx
  int64_t doc_start = 0;   // stream position of the first token of document j
  const int64_t last = static_cast<int64_t>(lengths.size()) - 1;
  for (int64_t i = 1; i <= num_samples; ++i) {
    const int64_t pos = i * seq_length;
    // Advance until document j covers `pos` (+ the extra token, when windows overlap).
    while (j < last && doc_start + lengths[static_cast<size_t>(j)] < pos + extra) {
      doc_start += lengths[static_cast<size_t>(j)];
      ++j;
    }
    out[2 * i] = j;
    out[2 * i + 1] = pos - doc_start;
  }
}

template <typename Idx>
py::array_t<int64_t> sample_idx_impl(const CArray<int32_t> &sizes, const CArray<Idx> &doc_idx,
                                     int64_t seq_length, bool add_extra_token) {
  const py::buffer_info sizes_info = sizes.request();
  const py::buffer_info doc_info = doc_idx.request();
  require_1d(sizes_info, "sizes");
  require_1d(doc_info, "doc_idx");
  if (seq_length < 1) {
    throw py::value_error("seq_length must be >= 1, got " + std::to_string(seq_length));
  }
  const int64_t extra = add_extra_token ? 1 : 0;
  const auto *sizes_ptr = static_cast<const int32_t *>(sizes_info.ptr);
  const auto *doc_ptr = static_cast<const Idx *>(doc_info.ptr);
  int64_t num_samples = 0;
  std::vector<int64_t> lengths;
  {
    py::gil_scoped_release release;
    lengths = epoch_doc_lengths(sizes_ptr, sizes_info.shape[0], doc_ptr, doc_info.shape[0]);
  }
  int64_t total = 0;
  for (int64_t len : lengths) total += len;
  if (total - extra >= seq_length) num_samples = (total - extra) / seq_length;
  py::array_t<int64_t> result({num_samples + 1, static_cast<int64_t>(2)});
  int64_t *out = result.mutable_data();
  {
    py::gil_scoped_release release;
    fill_sample_idx(lengths, seq_length, extra, num_samples, out);
  }
  return result;
}

py::array_t<int64_t> build_sample_idx(const CArray<int32_t> &sizes, const py::array &doc_idx,
                                      int64_t seq_length, bool add_extra_token) {
  if (doc_idx.dtype().is(py::dtype::of<int32_t>())) {
    return sample_idx_impl<int32_t>(sizes, doc_idx.cast<CArray<int32_t>>(), seq_length, add_extra_token);
  }
  if (doc_idx.dtype().is(py::dtype::of<int64_t>())) {
    return sample_idx_impl<int64_t>(sizes, doc_idx.cast<CArray<int64_t>>(), seq_length, add_extra_token);
  }
  throw py::value_error("doc_idx must be an int32 or int64 array, got dtype " +
                        std::string(py::str(doc_idx.dtype())));
}

void check_weights(const double *w, int64_t k) {
  if (k < 1) throw py::value_error("weights must hold at least one domain, got 0");
  double sum = 0.0;
  for (int64_t d = 0; d < k; ++d) {
    if (!std::isfinite(w[d]) || w[d] < 0.0) {
      throw py::value_error("weights[" + std::to_string(d) + "] = " + std::to_string(w[d]) +
                            "; expected a finite value >= 0");
    }
    sum += w[d];
  }
  if (!(sum > 0.0)) throw py::value_error("weights sum to 0; expected a positive sum");
}

// Greedy assignment: position i goes to the domain whose count lags w[d] * (i + 1) most
// (ties to the lowest index); its sample index continues from start_counts[d].
template <typename D>
void blend_loop(const double *w, int64_t k, int64_t n, const int64_t *start, D *domain,
                int64_t *sample) {
  std::vector<int64_t> count(static_cast<size_t>(k), 0);
  for (int64_t i = 0; i < n; ++i) {
    const double target = static_cast<double>(i + 1);
    int64_t best = 0;
    double best_err = w[0] * target - static_cast<double>(count[0]);
    for (int64_t d = 1; d < k; ++d) {
      const double err = w[d] * target - static_cast<double>(count[static_cast<size_t>(d)]);
      if (err > best_err) {
        best_err = err;
        best = d;
      }
    }
    domain[i] = static_cast<D>(best);
    sample[i] = start[best] + count[static_cast<size_t>(best)];
    ++count[static_cast<size_t>(best)];
  }
}

template <typename D>
py::tuple blend_impl(const double *w, int64_t k, int64_t n, const int64_t *start) {
  py::array_t<D> domain(n);
  py::array_t<int64_t> sample(n);
  D *domain_ptr = domain.mutable_data();
  int64_t *sample_ptr = sample.mutable_data();
  {
    py::gil_scoped_release release;
    blend_loop<D>(w, k, n, start, domain_ptr, sample_ptr);
  }
  return py::make_tuple(domain, sample);
}

py::tuple build_blending_indices(const CArray<double> &weights, int64_t num_samples,
                                 const CArray<int64_t> &start_counts) {
  const py::buffer_info w_info = weights.request();
  const py::buffer_info s_info = start_counts.request();
  require_1d(w_info, "weights");
  require_1d(s_info, "start_counts");
  const int64_t k = w_info.shape[0];
  if (s_info.shape[0] != k) {
    throw py::value_error("start_counts has " + std::to_string(s_info.shape[0]) +
                          " entries; expected one per domain (" + std::to_string(k) + ")");
  }
  if (num_samples < 0) {
    throw py::value_error("num_samples must be >= 0, got " + std::to_string(num_samples));
  }
  const auto *w = static_cast<const double *>(w_info.ptr);
  const auto *start = static_cast<const int64_t *>(s_info.ptr);
  check_weights(w, k);
  for (int64_t d = 0; d < k; ++d) {
    if (start[d] < 0) {
      throw py::value_error("start_counts[" + std::to_string(d) + "] = " + std::to_string(start[d]) +
                            "; expected >= 0");
    }
  }
  if (k <= 32767) return blend_impl<int16_t>(w, k, num_samples, start);
  return blend_impl<int32_t>(w, k, num_samples, start);
}

}  // namespace

PYBIND11_MODULE(_helpers, m) {
  m.doc() = "megamix index builders: build_sample_idx and build_blending_indices";
  m.def("build_sample_idx", &build_sample_idx, py::arg("sizes"), py::arg("doc_idx"),
        py::arg("seq_length"), py::arg("add_extra_token") = true,
        "Start (doc_idx position, offset) of every packed window of one epoch; int64[num_samples + 1, 2].");
  m.def("build_blending_indices", &build_blending_indices, py::arg("weights"), py::arg("num_samples"),
        py::arg("start_counts"),
        "Greedy error-minimising domain assignment of one segment; (domain_index, domain_sample_index).");
}
