// The folded collection kernel: K triplets (or the K nearest candidates) per anchor sample of a
// whole collection, from the distinct records of the anchors and of the candidates.
//
// Scores depend on records only, so each distinct anchor record u is scored once against each
// distinct candidate record v (one row of U_c floats, reused, never a U x U matrix). The mining
// rule then needs, per u, only a few score *levels* (distinct score values) and the records at
// each: the K highest (positives), and the first 2K of each negative order (semi-hard: from the
// lowest score >= threshold up, then from the highest below threshold down; hard: from the lowest
// up); every level holds at least one usable sample, so K positives can use up at most K levels.
// Within a level every sample scores the same, and the miner's tie rule decides: the smallest tie
// key (the clockwise distance on the seed's circle from the anchor's hash to the candidate's),
// then the lowest index, i.e. the samples in circular (hash, index) order starting just after the
// anchor's hash. Each record keeps its samples in (hash, index) order, so that order over a level
// is a k-way merge of its records, a scan of the global order (large levels), or one merged,
// sorted array per level (many small records). Samples with the anchor's id are skipped; a record
// whose every sample has the anchor's id is not a candidate of that anchor at all, so anchors are
// grouped by that set of records (almost always empty, or their own record when it is a single
// sample) and each group computes its levels without them. The result equals the unfolded
// miner's (meta_entity.h, mine_rows) and the reference (ops/reference.py, mine_k_from_scores /
// top_k_from_scores) exactly.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "checks.h"
#include "cpu/cpu_prep.h"
#include "cpu/hot_loops.h"
#include "meta_entity.h"
#include "meta_entity_ops.h"

namespace medtrim {
namespace {
using namespace cpu_prep;

// Candidate samples in the orders the tie rule walks.
struct CandidateOrders {
  int64_t n = 0, records = 0;
  std::vector<uint32_t> hash;          // [n] tie hash of each sample (0 with lowest-index ties)
  std::vector<int64_t> rec_start;      // [records + 1] record v's samples: rec_start[v] ..
  std::vector<uint32_t> rec_hash;      // [n] by record, then (hash, index)
  std::vector<int64_t> rec_index;      // [n]
  std::vector<uint32_t> all_hash;      // [n] every sample by (hash, index): the whole circle
  std::vector<int64_t> all_index;      // [n]
  std::vector<int64_t> all_record;     // [n]
  std::vector<int64_t> by_id;          // [n] sample indices sorted by id
  const int64_t* ids = nullptr;
  const int64_t* record = nullptr;

  CandidateOrders(const int64_t* inverse, const int64_t* ids_, int64_t n_, int64_t records_,
                  std::optional<uint64_t> seed)
      : n(n_), records(records_), ids(ids_), record(inverse) {
    hash.resize(n);
    for (int64_t j = 0; j < n; ++j) hash[j] = seed ? sample_tie_hash(*seed, ids[j]) : 0u;
    auto by_hash = [&](int64_t x, int64_t y) { return hash[x] < hash[y] || (hash[x] == hash[y] && x < y); };
    std::vector<int64_t> order(n);
    for (int64_t j = 0; j < n; ++j) order[j] = j;
    std::sort(order.begin(), order.end(), by_hash);
    all_hash.resize(n);
    all_index = order;
    all_record.resize(n);
    for (int64_t k = 0; k < n; ++k) {
      all_hash[k] = hash[order[k]];
      all_record[k] = record[order[k]];
    }
    // a stable counting sort of the circle by record keeps (hash, index) order inside each record
    rec_start.assign(records + 1, 0);
    for (int64_t j = 0; j < n; ++j) ++rec_start[record[j] + 1];
    for (int64_t v = 0; v < records; ++v) rec_start[v + 1] += rec_start[v];
    std::vector<int64_t> fill(rec_start.begin(), rec_start.end() - 1);
    rec_hash.resize(n);
    rec_index.resize(n);
    for (int64_t k = 0; k < n; ++k) {
      const int64_t at = fill[all_record[k]]++;
      rec_hash[at] = all_hash[k];
      rec_index[at] = all_index[k];
    }
    by_id.resize(n);
    for (int64_t j = 0; j < n; ++j) by_id[j] = j;
    std::sort(by_id.begin(), by_id.end(), [&](int64_t x, int64_t y) {
      return ids[x] < ids[y] || (ids[x] == ids[y] && x < y);
    });
  }

  int64_t count(int64_t v) const { return rec_start[v + 1] - rec_start[v]; }

  // (record, samples of the record with this id) for every record holding the id
  void same_id_records(int64_t id, std::vector<std::pair<int64_t, int64_t>>& out) const {
    out.clear();
    auto lo = std::lower_bound(by_id.begin(), by_id.end(), id, [&](int64_t j, int64_t x) { return ids[j] < x; });
    for (; lo != by_id.end() && ids[*lo] == id; ++lo) {
      const int64_t v = record[*lo];
      auto it = std::find_if(out.begin(), out.end(), [&](const auto& e) { return e.first == v; });
      if (it == out.end()) out.emplace_back(v, 1); else ++it->second;
    }
  }
};

// The first `limit` distinct values of one order, best first (a handful: K or 2K).
struct LevelPicker {
  bool descending;
  size_t limit;
  std::vector<float> values;

  bool before(float x, float y) const { return descending ? x > y : x < y; }
  void offer(float s) {
    if (values.size() == limit && !before(s, values.back())) return;
    auto it = std::lower_bound(values.begin(), values.end(), s, [&](float x, float y) { return before(x, y); });
    if (it != values.end() && *it == s) return;
    values.insert(it, s);
    if (values.size() > limit) values.pop_back();
  }
  int find(float s) const {
    auto it = std::lower_bound(values.begin(), values.end(), s, [&](float x, float y) { return before(x, y); });
    return it != values.end() && *it == s ? static_cast<int>(it - values.begin()) : -1;
  }
};

struct Level {
  float value;
  std::vector<int64_t> records;
  int64_t samples = 0;
  std::vector<std::pair<uint32_t, int64_t>> merged;  // built on first use (many small records)
  bool has_merged = false;
};

// One order of levels (positives, semi-hard above threshold, below threshold, hard).
struct LevelOrder {
  LevelPicker picker;
  std::vector<Level> levels;
  std::vector<int32_t>* tag;  // record -> level index in this order, -1 (global scans)
};

// Walks the samples of one level in tie order for one anchor (hash h): next() gives the next
// sample index, or -1 when the level is exhausted. The caller skips the samples it cannot use.
class LevelWalk {
 public:
  LevelWalk(const CandidateOrders& c, Level& level, const std::vector<int32_t>& tag, int level_id,
            uint32_t h)
      : c_(c), tag_(tag), level_id_(level_id), h_(h) {
    if (level.records.size() <= 8) {
      for (int64_t v : level.records) add_range(c.rec_hash.data(), c.rec_index.data(), c.rec_start[v], c.rec_start[v + 1]);
    } else if (level.samples * 32 >= c.n) {
      global_ = true;
      pos_ = std::upper_bound(c.all_hash.begin(), c.all_hash.end(), h) - c.all_hash.begin();
      left_ = c.n;
    } else {
      if (!level.has_merged) {
        level.merged.reserve(level.samples);
        for (int64_t v : level.records)
          for (int64_t k = c.rec_start[v]; k < c.rec_start[v + 1]; ++k)
            level.merged.emplace_back(c.rec_hash[k], c.rec_index[k]);
        std::sort(level.merged.begin(), level.merged.end());
        level.has_merged = true;
      }
      merged_ = &level.merged;
      Range r;
      r.begin = 0;
      r.end = static_cast<int64_t>(level.merged.size());
      auto it = std::upper_bound(level.merged.begin(), level.merged.end(), std::make_pair(h, std::numeric_limits<int64_t>::max()));
      r.pos = it - level.merged.begin();
      r.left = r.end;
      if (r.pos == r.end) r.pos = r.begin;
      ranges_.push_back(r);
    }
  }

  int64_t next() {
    if (global_) {
      while (left_ > 0) {
        if (pos_ == c_.n) pos_ = 0;
        const int64_t k = pos_++;
        --left_;
        if (tag_[c_.all_record[k]] == level_id_) return c_.all_index[k];
      }
      return -1;
    }
    int best = -1;
    uint64_t best_key = 0;
    for (size_t r = 0; r < ranges_.size(); ++r) {
      const Range& g = ranges_[r];
      if (g.left == 0) continue;
      const uint64_t key = (static_cast<uint64_t>(tie_key(h_, hash_at(g, g.pos))) << 32) |
                           static_cast<uint32_t>(index_at(g, g.pos));
      if (best < 0 || key < best_key) { best = static_cast<int>(r); best_key = key; }
    }
    if (best < 0) return -1;
    Range& g = ranges_[best];
    const int64_t out = index_at(g, g.pos);
    --g.left;
    if (++g.pos == g.end) g.pos = g.begin;
    return out;
  }

 private:
  struct Range {
    const uint32_t* hash = nullptr;
    const int64_t* index = nullptr;
    int64_t begin = 0, end = 0, pos = 0, left = 0;
  };
  uint32_t hash_at(const Range& g, int64_t k) const { return merged_ ? (*merged_)[k].first : g.hash[k]; }
  int64_t index_at(const Range& g, int64_t k) const { return merged_ ? (*merged_)[k].second : g.index[k]; }
  void add_range(const uint32_t* hash, const int64_t* index, int64_t b, int64_t e) {
    if (b == e) return;
    Range r{hash, index, b, e, 0, e - b};
    r.pos = std::upper_bound(hash + b, hash + e, h_) - hash;
    if (r.pos == e) r.pos = b;
    ranges_.push_back(r);
  }

  const CandidateOrders& c_;
  const std::vector<int32_t>& tag_;
  int level_id_;
  uint32_t h_;
  bool global_ = false;
  int64_t pos_ = 0, left_ = 0;
  const std::vector<std::pair<uint32_t, int64_t>>* merged_ = nullptr;
  std::vector<Range> ranges_;
};

struct FoldedParams {
  int64_t k;
  bool negatives;
  float threshold, upper, min_positive;
  std::optional<uint64_t> seed;
};

// Per-thread scratch: the score row of one anchor record and the level tags of each order.
struct Scratch {
  std::vector<float> row;
  std::vector<int32_t> tags[4];
  explicit Scratch(int64_t records) : row(records) {
    for (auto& t : tags) t.assign(records, -1);
  }
};

// The levels of one group of anchor samples (one anchor record, one set of excluded records).
void build_levels(const std::vector<float>& row, const std::vector<char>& excluded,
                  const CandidateOrders& c, const FoldedParams& fp, bool want_semi, bool want_hard,
                  std::vector<LevelOrder*>& orders) {
  LevelOrder& pos = *orders[0];
  LevelOrder& above = *orders[1];
  LevelOrder& below = *orders[2];
  LevelOrder& hard = *orders[3];
  for (LevelOrder* o : orders) { o->picker.values.clear(); o->levels.clear(); }
  const int64_t m = static_cast<int64_t>(row.size());
  for (int64_t v = 0; v < m; ++v) {
    if (excluded[v]) continue;
    const float s = row[v];
    pos.picker.offer(s);
    if (!fp.negatives || !(s < fp.upper)) continue;
    if (want_semi) {
      if (s >= fp.threshold) above.picker.offer(s); else below.picker.offer(s);
    }
    if (want_hard) hard.picker.offer(s);
  }
  for (LevelOrder* o : orders) {
    o->levels.resize(o->picker.values.size());
    for (size_t i = 0; i < o->levels.size(); ++i) o->levels[i].value = o->picker.values[i];
  }
  for (int64_t v = 0; v < m; ++v) {
    if (excluded[v]) continue;
    const float s = row[v];
    for (LevelOrder* o : orders) {
      if (o->levels.empty()) continue;
      const int i = o->picker.find(s);
      if (i < 0) continue;
      o->levels[i].records.push_back(v);
      o->levels[i].samples += c.count(v);
      (*o->tag)[v] = i;
    }
  }
}

void clear_tags(std::vector<LevelOrder*>& orders) {
  for (LevelOrder* o : orders)
    for (const Level& l : o->levels)
      for (int64_t v : l.records) (*o->tag)[v] = -1;
}

// Takes up to `want` usable samples of one order's levels for one anchor; `taken` holds the
// samples already chosen (positives), which a negative must not repeat.
void take(LevelOrder& order, const CandidateOrders& c, int64_t anchor_id, uint32_t h, int64_t want,
          float floor, bool use_floor, const std::vector<int64_t>& taken, std::vector<int64_t>& out,
          std::vector<float>& out_score) {
  for (size_t i = 0; i < order.levels.size() && static_cast<int64_t>(out.size()) < want; ++i) {
    Level& level = order.levels[i];
    if (use_floor && !(level.value >= floor)) return;
    LevelWalk walk(c, level, *order.tag, static_cast<int>(i), h);
    for (int64_t j = walk.next(); j >= 0; j = walk.next()) {
      if (c.ids[j] == anchor_id) continue;
      if (std::find(taken.begin(), taken.end(), j) != taken.end()) continue;
      out.push_back(j);
      out_score.push_back(level.value);
      if (static_cast<int64_t>(out.size()) == want) return;
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mine_folded_cpu(
    const at::Tensor& a_dis, const at::Tensor& a_adj, const at::Tensor& a_dir,
    const at::Tensor& a_inverse, const at::Tensor& a_ids, const at::Tensor& semi_hard,
    const at::Tensor& b_dis, const at::Tensor& b_adj, const at::Tensor& b_dir,
    const at::Tensor& b_inverse, const at::Tensor& b_ids, double w_dis, double w_adj, double w_dir,
    double threshold, double upper, double min_positive_score,
    const std::optional<at::Tensor>& tie_seed_tensor, int64_t k, bool negatives) {
  check_score_inputs(a_dis, a_adj, a_dir, b_dis, b_adj, b_dir, w_dis, w_adj, w_dir);
  TORCH_CHECK(a_dis.device().is_cpu(), "mine_folded_cpu called with tensors on ", a_dis.device());
  check_mining(a_inverse, a_ids, b_inverse, b_ids, semi_hard, threshold, upper);
  check_inverse("anchor_inverse", a_inverse, a_dis.size(0));
  check_inverse("candidate_inverse", b_inverse, b_dis.size(0));
  TORCH_CHECK(k >= 1, "k must be >= 1, got ", k);
  TORCH_CHECK(std::isfinite(min_positive_score) && min_positive_score >= 0,
              "min_positive_score must be finite and >= 0, got ", min_positive_score);
  const FoldedParams fp{k, negatives, static_cast<float>(threshold), static_cast<float>(upper),
                        static_cast<float>(min_positive_score), read_tie_seed(tie_seed_tensor)};

  const auto ad = a_dis.contiguous(), aa = a_adj.contiguous(), ar = a_dir.contiguous();
  const auto bd = b_dis.contiguous(), ba = b_adj.contiguous(), br = b_dir.contiguous();
  const auto ainv = a_inverse.contiguous(), aid = a_ids.contiguous(), semi = semi_hard.contiguous();
  const auto binv = b_inverse.contiguous(), bid = b_ids.contiguous();
  const int64_t n = a_ids.size(0), records_a = a_dis.size(0), records_b = b_dis.size(0);

  auto positive = at::full({n, k}, -1, a_ids.options());
  auto negative = at::full({n, negatives ? k : 0}, -1, a_ids.options());
  auto pos_score = at::full({n, k}, std::numeric_limits<float>::quiet_NaN(), a_dis.options().dtype(at::kFloat));
  auto neg_score = at::full({n, negatives ? k : 0}, std::numeric_limits<float>::quiet_NaN(),
                            a_dis.options().dtype(at::kFloat));
  if (n == 0 || b_ids.size(0) == 0) return {positive, negative, pos_score, neg_score};

  const QuotientTable table(a_adj.size(2), a_dir.size(2));
  const cpu::Params p = params(aa, ar, w_dis, w_adj, w_dir, table, threshold, upper);
  const cpu::Anchors anchors = anchor_view(ad, aa, ar);
  const CandidateGrouping grouping(bd, ba, br, nullptr);
  const CandidateOrders cands(binv.data_ptr<int64_t>(), bid.data_ptr<int64_t>(), b_ids.size(0),
                              records_b, fp.seed);
  // the anchor samples of each anchor record
  const int64_t* a_rec = ainv.data_ptr<int64_t>();
  std::vector<int64_t> a_start(records_a + 1, 0), a_list(n);
  for (int64_t i = 0; i < n; ++i) ++a_start[a_rec[i] + 1];
  for (int64_t u = 0; u < records_a; ++u) a_start[u + 1] += a_start[u];
  {
    std::vector<int64_t> fill(a_start.begin(), a_start.end() - 1);
    for (int64_t i = 0; i < n; ++i) a_list[fill[a_rec[i]]++] = i;
  }
  const int64_t* ids = aid.data_ptr<int64_t>();
  const bool* semi_p = semi.data_ptr<bool>();
  int64_t* pos_out = positive.data_ptr<int64_t>();
  int64_t* neg_out = negatives ? negative.data_ptr<int64_t>() : nullptr;
  float* pos_s = pos_score.data_ptr<float>();
  float* neg_s = negatives ? neg_score.data_ptr<float>() : nullptr;
  const auto score_rows = hot_loops().score_rows;
  const size_t neg_levels = static_cast<size_t>(2 * k);

  at::parallel_for(0, records_a, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch(records_b);
    LevelOrder pos_order{LevelPicker{true, static_cast<size_t>(k), {}}, {}, &scratch.tags[0]};
    LevelOrder above{LevelPicker{false, neg_levels, {}}, {}, &scratch.tags[1]};
    LevelOrder below{LevelPicker{true, neg_levels, {}}, {}, &scratch.tags[2]};
    LevelOrder hard{LevelPicker{false, neg_levels, {}}, {}, &scratch.tags[3]};
    std::vector<LevelOrder*> orders{&pos_order, &above, &below, &hard};
    std::vector<char> excluded(records_b, 0);
    std::vector<std::pair<int64_t, int64_t>> same;
    std::vector<std::pair<std::vector<int64_t>, int64_t>> keyed;  // (excluded records, sample)
    std::vector<int64_t> pos_pick, neg_pick;
    const std::vector<int64_t> no_samples;
    std::vector<float> pos_val, neg_val;
    for (int64_t u = begin; u < end; ++u) {
      if (a_start[u] == a_start[u + 1]) continue;
      cpu::Anchors one = anchors;  // a view of record u alone
      one.dis += u;
      one.adj += u * anchors.adj_stride;
      one.dir += u * anchors.dir_stride;
      score_rows(one, grouping.view, p, 0, 1, scratch.row.data());
      // group the record's samples by the candidate records their id uses up entirely
      keyed.clear();
      for (int64_t t = a_start[u]; t < a_start[u + 1]; ++t) {
        const int64_t i = a_list[t];
        cands.same_id_records(ids[i], same);
        std::vector<int64_t> gone;
        for (const auto& [v, cnt] : same)
          if (cnt == cands.count(v)) gone.push_back(v);
        std::sort(gone.begin(), gone.end());
        keyed.emplace_back(std::move(gone), i);
      }
      std::sort(keyed.begin(), keyed.end());
      for (size_t g0 = 0; g0 < keyed.size();) {
        size_t g1 = g0;
        bool want_semi = false, want_hard = false;
        while (g1 < keyed.size() && keyed[g1].first == keyed[g0].first) {
          (semi_p[keyed[g1].second] ? want_semi : want_hard) = true;
          ++g1;
        }
        for (int64_t v : keyed[g0].first) excluded[v] = 1;
        build_levels(scratch.row, excluded, cands, fp, want_semi, want_hard, orders);
        for (size_t t = g0; t < g1; ++t) {
          const int64_t i = keyed[t].second;
          const uint32_t h = fp.seed ? sample_tie_hash(*fp.seed, ids[i]) : 0u;
          pos_pick.clear(); pos_val.clear();
          take(pos_order, cands, ids[i], h, k, fp.min_positive, fp.min_positive > 0.0f, no_samples,
               pos_pick, pos_val);
          for (size_t s = 0; s < pos_pick.size(); ++s) {
            pos_out[i * k + s] = pos_pick[s];
            pos_s[i * k + s] = pos_val[s];
          }
          if (!negatives || pos_pick.empty()) continue;
          neg_pick.clear(); neg_val.clear();
          const int64_t want = static_cast<int64_t>(pos_pick.size());
          if (semi_p[i]) {
            take(above, cands, ids[i], h, want, 0.0f, false, pos_pick, neg_pick, neg_val);
            take(below, cands, ids[i], h, want, 0.0f, false, pos_pick, neg_pick, neg_val);
          } else {
            take(hard, cands, ids[i], h, want, 0.0f, false, pos_pick, neg_pick, neg_val);
          }
          for (size_t s = 0; s < neg_pick.size(); ++s) {
            neg_out[i * k + s] = neg_pick[s];
            neg_s[i * k + s] = neg_val[s];
          }
        }
        clear_tags(orders);
        for (int64_t v : keyed[g0].first) excluded[v] = 0;
        g0 = g1;
      }
    }
  });
  return {positive, negative, pos_score, neg_score};
}

}  // namespace medtrim
