// The folded collection kernel: K triplets (or the K nearest candidates) per anchor sample of a
// whole collection, from the distinct records of the anchors and of the candidates.
//
// Scores depend on records only, so each distinct anchor record u is scored once against each
// distinct candidate record v, group by group (candidate records grouped by disease mask: a group
// that shares no disease with u scores one value for all its records; never a U x U matrix). The
// mining rule then needs, per u, only a few score *levels* (distinct score values) and the groups
// and records at each: the K + E highest (positives), then the first K + P + E' of each negative
// order (semi-hard: from the lowest score >= threshold up, then from the highest below threshold
// down; hard: from the lowest up). A level is unusable for an anchor only when every sample in it
// has the anchor's id (E: the records all of whose samples carry the id, almost always 0 or 1;
// E': those of them scoring below `upper`), and each positive scoring below `upper` (P of them)
// can use up a negative level; so these levels always hold enough.
// Within a level every sample scores the same, and the miner's tie rule decides: the smallest tie
// key (the clockwise distance on the seed's circle from the anchor's hash to the candidate's),
// then the lowest index, i.e. the samples in circular (hash, index) order starting just after the
// anchor's hash. Each record keeps its samples in (hash, index) order, so that order over a level
// is a k-way merge of its records, a scan of the global order (large levels), or one merged,
// sorted array per level (many small records). Samples with the anchor's id are skipped. The
// result equals the unfolded miner's (meta_entity.h, mine_rows) and the reference
// (ops/reference.py, mine_k_from_scores / top_k_from_scores) exactly.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
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

// A stable counting sort: the positions 0..n-1 ordered by key[pos] in [0, buckets), equal keys
// in position order; start[b] .. start[b + 1] of the result hold bucket b.
std::vector<int64_t> stable_buckets(const int64_t* key, int64_t n, int64_t buckets,
                                    std::vector<int64_t>& start) {
  start.assign(buckets + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++start[key[i] + 1];
  for (int64_t b = 0; b < buckets; ++b) start[b + 1] += start[b];
  std::vector<int64_t> fill(start.begin(), start.end() - 1), out(n);
  for (int64_t i = 0; i < n; ++i) out[fill[key[i]]++] = i;
  return out;
}

// Candidate samples in the orders the tie rule walks.
struct CandidateOrders {
  int64_t n = 0;
  std::vector<int64_t> rec_start;      // [records + 1] record v's samples: rec_start[v] ..
  std::vector<uint32_t> rec_hash;      // [n] by record, then (hash, index)
  std::vector<int64_t> rec_index;      // [n]
  std::vector<uint32_t> all_hash;      // [n] every sample by (hash, index): the whole circle
  std::vector<int64_t> all_index;      // [n]
  std::vector<int64_t> all_record;     // [n]
  std::vector<int64_t> by_id;          // [n] sample indices sorted by id
  const int64_t* ids = nullptr;
  const int64_t* record = nullptr;

  CandidateOrders(const int64_t* inverse, const int64_t* ids_, int64_t n_, int64_t records,
                  std::optional<uint64_t> seed)
      : n(n_), ids(ids_), record(inverse) {
    std::vector<uint32_t> hash(n);   // tie hash of each sample (0 with lowest-index ties)
    for (int64_t j = 0; j < n; ++j) hash[j] = seed ? sample_tie_hash(*seed, ids[j]) : 0u;
    all_index.resize(n);
    for (int64_t j = 0; j < n; ++j) all_index[j] = j;
    std::sort(all_index.begin(), all_index.end(),
              [&](int64_t x, int64_t y) { return hash[x] < hash[y] || (hash[x] == hash[y] && x < y); });
    all_hash.resize(n);
    all_record.resize(n);
    for (int64_t k = 0; k < n; ++k) {
      all_hash[k] = hash[all_index[k]];
      all_record[k] = record[all_index[k]];
    }
    // the circle sorted stably by record keeps (hash, index) order inside each record
    const std::vector<int64_t> by_record = stable_buckets(all_record.data(), n, records, rec_start);
    rec_hash.resize(n);
    rec_index.resize(n);
    for (int64_t t = 0; t < n; ++t) {
      rec_hash[t] = all_hash[by_record[t]];
      rec_index[t] = all_index[by_record[t]];
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

struct Level {
  float value;
  std::vector<int64_t> groups;    // candidate groups whose every record scores `value`
  std::vector<int64_t> records;   // single records (of groups that score record by record)
  int64_t record_count = 0, samples = 0;
  std::vector<std::pair<uint32_t, int64_t>> merged;  // built on first use (many small records)
};

// How the candidate groups score against an anchor disease mask (shared by every anchor record
// with that mask): group_score[g] is the one score of every record of a group that shares no
// disease with the mask (or of any group, for a no-finding anchor), NaN for a group scored record
// by record; `pending` holds the latter with bounds on their scores, best upper bound first.
struct MaskPlan {
  uint32_t mask = 0;
  bool ready = false;
  std::vector<float> group_score;   // [groups]
  struct Pending { float hi, lo; int64_t g; };
  std::vector<Pending> pending;
  std::vector<int64_t> zero;        // groups that score 0
  std::vector<std::pair<int64_t, float>> other;  // constant groups with another score

  void build(uint32_t mu, const cpu::GroupedCandidates& gv, const cpu::Params& p) {
    mask = mu;
    ready = true;
    group_score.resize(gv.groups);
    pending.clear();
    zero.clear();
    other.clear();
    const ScoreWeights w{p.w_dis, p.w_adj, p.w_dir};
    const double inv = mu != 0 ? 1.0 / popcount32(mu) : 0.0;
    for (int64_t g = 0; g < gv.groups; ++g) {
      const uint32_t mg = gv.mask[g], shared = mu & mg;
      if (mu == 0 || shared == 0) {
        const float s = mu == 0 ? empty_anchor_score(mg, w) : 0.0f;
        group_score[g] = s;
        if (s == 0.0f) zero.push_back(g); else other.emplace_back(g, s);
        continue;
      }
      group_score[g] = std::numeric_limits<float>::quiet_NaN();
      const double lo = p.w_dis * popcount32(shared) / popcount32(mu | mg);
      const double hi = lo + (p.w_adj + p.w_dir) * popcount32(shared) * inv;
      // widened by 1e-6 (relative): the kernel's float rounding (6e-8) never leaves the range
      pending.push_back({static_cast<float>(hi * (1 + 1e-6) + 1e-30), static_cast<float>(lo * (1 - 1e-6)), g});
    }
    std::sort(pending.begin(), pending.end(),
              [](const Pending& x, const Pending& y) { return x.hi > y.hi || (x.hi == y.hi && x.g < y.g); });
  }
};

// What one anchor record's walks read: its mask's plan and a scratch for one group's scores.
struct Row {
  const MaskPlan* plan = nullptr;
  std::vector<float> member_score;
};

// One order of levels (positives, semi-hard above threshold, below threshold, hard): its first
// `limit` distinct score values, best first, with the groups and records at each, kept in one
// pass (a better value evicts the last level); and the tags that say which level a group or a
// record belongs to (global scans test membership with them).
struct LevelOrder {
  bool descending = true;
  size_t limit = 1;
  std::vector<Level> levels;      // best first; slots past `used` are spare (recycled)
  size_t used = 0;
  std::vector<int32_t> group_tag, record_tag;  // -1: in no level

  bool before(float x, float y) const { return descending ? x > y : x < y; }
  void reset(size_t new_limit) {
    limit = new_limit;
    for (size_t i = 0; i < used; ++i) {
      levels[i].groups.clear();
      levels[i].records.clear();
      levels[i].merged.clear();
      levels[i].record_count = levels[i].samples = 0;
    }
    used = 0;
  }
  // The level of value s, made if s is among the first `limit` values (else null).
  Level* slot(float s) {
    if (used == limit && before(levels[used - 1].value, s)) return nullptr;   // most entries
    return insert(s);
  }
  __attribute__((noinline)) Level* insert(float s) {
    size_t i = 0;
    while (i < used && before(levels[i].value, s)) ++i;
    if (i < used && levels[i].value == s) return &levels[i];
    if (used == limit) {   // evict the last level: its lists become the new level's
      Level& last = levels[used - 1];
      last.groups.clear();
      last.records.clear();
      --used;
    }
    if (levels.size() == used) levels.emplace_back();
    // rotate the spare slot at `used` into place i (moves vectors, keeps their storage)
    std::rotate(levels.begin() + i, levels.begin() + used, levels.begin() + used + 1);
    ++used;
    levels[i].value = s;
    return &levels[i];
  }
  int level_of(int64_t v, int64_t g, const Row& row) const {
    return std::isnan(row.plan->group_score[g]) ? record_tag[v] : group_tag[g];
  }
};

// Shared, read-only: the candidate records' groups and their sample counts.
struct Groups {
  const cpu::GroupedCandidates& view;
  std::vector<int64_t> group_of;   // [records] group of each record
  std::vector<int64_t> samples;    // [groups] samples of all records of the group

  Groups(const cpu::GroupedCandidates& v, const CandidateOrders& c) : view(v) {
    group_of.resize(v.m);
    samples.assign(v.groups, 0);
    for (int64_t g = 0; g < v.groups; ++g)
      for (int64_t k = v.start[g]; k < v.start[g + 1]; ++k) {
        group_of[v.order[k]] = g;
        samples[g] += c.count(v.order[k]);
      }
  }
  int64_t size(int64_t g) const { return view.start[g + 1] - view.start[g]; }
  template <class F>
  void for_records(const Level& level, F&& f) const {
    for (int64_t g : level.groups)
      for (int64_t k = view.start[g]; k < view.start[g + 1]; ++k) f(view.order[k]);
    for (int64_t v : level.records) f(v);
  }
};

// Walks the samples of one level in tie order for one anchor (hash h): next() gives the next
// sample index, or -1 when the level is exhausted. The caller skips the samples it cannot use.
class LevelWalk {
 public:
  // The cheapest of the three walks for this level, by expected work per anchor sample of the
  // `group` samples of the anchor record: a scan of the circle visits about n / samples entries
  // per sample it finds; a merge of the records costs a search per record; one merged array costs
  // its sort, shared by the anchor record's samples, and a search.
  // `force` (tests): 1 merge, 2 scan, 3 merged array, 0 by cost. All three give the same order.
  LevelWalk(const CandidateOrders& c, const Groups& groups, const LevelOrder& order, const Row& row,
            Level& level, int level_id, uint32_t h, int64_t group, int force)
      : c_(c), groups_(groups), order_(order), row_(row), level_id_(level_id), h_(h) {
    const double records = static_cast<double>(level.record_count);
    const double samples = static_cast<double>(std::max<int64_t>(level.samples, 1));
    const double log_m = std::log2(samples + 1.0);
    double scan = 2.0 * static_cast<double>(c.n) / samples;
    double merge = records * (1.0 + std::log2(samples / std::max(records, 1.0) + 1.0));
    double merged = log_m + (!level.merged.empty() ? 0.0 : samples * log_m / static_cast<double>(group));
    if (force != 0) {
      merge = force == 1 ? 0.0 : 1e300;
      scan = force == 2 ? 0.0 : 1e300;
      merged = force == 3 ? 0.0 : 1e300;
    }
    if ((force == 0 && records <= 2) || (merge <= scan && merge <= merged)) {
      groups.for_records(level, [&](int64_t v) {
        add_range(c.rec_hash.data(), c.rec_index.data(), c.rec_start[v], c.rec_start[v + 1]);
      });
    } else if (scan <= merged) {
      global_ = true;
      pos_ = std::upper_bound(c.all_hash.begin(), c.all_hash.end(), h) - c.all_hash.begin();
      left_ = c.n;
    } else {
      if (level.merged.empty()) {
        level.merged.reserve(level.samples);
        groups.for_records(level, [&](int64_t v) {
          for (int64_t k = c.rec_start[v]; k < c.rec_start[v + 1]; ++k)
            level.merged.emplace_back(c.rec_hash[k], c.rec_index[k]);
        });
        std::sort(level.merged.begin(), level.merged.end());
      }
      merged_ = &level.merged;
      Range r;
      r.end = r.left = static_cast<int64_t>(level.merged.size());
      auto it = std::upper_bound(level.merged.begin(), level.merged.end(),
                                 std::make_pair(h, std::numeric_limits<int64_t>::max()));
      r.pos = it - level.merged.begin();
      if (r.pos == r.end) r.pos = 0;
      if (r.left > 0) ranges_.push_back(r);
    }
  }

  int64_t next() {
    if (global_) {
      while (left_ > 0) {
        if (pos_ == c_.n) pos_ = 0;
        const int64_t k = pos_++;
        --left_;
        const int64_t v = c_.all_record[k];
        if (order_.level_of(v, groups_.group_of[v], row_) == level_id_) return c_.all_index[k];
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
  const Groups& groups_;
  const LevelOrder& order_;
  const Row& row_;
  int level_id_;
  uint32_t h_;
  bool global_ = false;
  int64_t pos_ = 0, left_ = 0;
  const std::vector<std::pair<uint32_t, int64_t>>* merged_ = nullptr;
  std::vector<Range> ranges_;
};

struct FoldedParams {
  int64_t k;
  float threshold, upper, min_positive;
  std::optional<uint64_t> seed;
  int walk;  // MEDTRIM_FOLDED_WALK (tests): merge / scan / merged forces one walk; unset: by cost
};

int walk_mode_from_env() {
  const char* v = std::getenv("MEDTRIM_FOLDED_WALK");
  if (v == nullptr || *v == '\0') return 0;
  const std::string s(v);
  if (s == "merge") return 1;
  if (s == "scan") return 2;
  if (s == "merged") return 3;
  TORCH_CHECK(false, "MEDTRIM_FOLDED_WALK must be merge, scan or merged, got '", s, "'");
  return 0;
}

using ScoreGroupFn = decltype(&cpu::baseline::score_group);

// Which orders a call of build_levels builds (the others are left as they are).
enum : unsigned { kPos = 1, kAbove = 2, kBelow = 4, kHard = 8 };

// The levels of anchor record `one` (a view of that record alone) of the `active` orders, the
// first pos_limit / neg_limit of each (see the top). Groups that share no disease score one
// value; a group that does has its scores in [w_dis J, w_dis J + (w_adj + w_dir) |shared| / |D_u|]
// (every IoU is in [0, 1]), and is scored only when that range can still reach a level of an
// order being built: most groups cannot once the first ones have set the levels, as in the
// unfolded kernel's could_take.
void build_levels(const cpu::Anchors& one, const cpu::GroupedCandidates& gv, const cpu::Params& p,
                  ScoreGroupFn score_group, const Groups& groups, const CandidateOrders& c,
                  const FoldedParams& fp, unsigned active, size_t pos_limit, size_t neg_limit,
                  Row& row, std::vector<LevelOrder*>& orders) {
  LevelOrder& pos = *orders[0];
  LevelOrder& above = *orders[1];
  LevelOrder& below = *orders[2];
  LevelOrder& hard = *orders[3];
  if (active & kPos) pos.reset(pos_limit);
  if (active & kAbove) above.reset(neg_limit);
  if (active & kBelow) below.reset(neg_limit);
  if (active & kHard) hard.reset(neg_limit);
  const bool use_pos = active & kPos, use_above = active & kAbove, use_below = active & kBelow,
             use_hard = active & kHard;
  // the order(s) of value s: positives; below `upper`, the negative orders being built
  auto place = [&](float s, auto&& add) {
    if (use_pos)
      if (Level* l = pos.slot(s)) add(*l);
    if (!(s < fp.upper)) return;
    if (s >= fp.threshold ? use_above : use_below)
      if (Level* l = (s >= fp.threshold ? above : below).slot(s)) add(*l);
    if (use_hard)
      if (Level* l = hard.slot(s)) add(*l);
  };
  auto last = [](const LevelOrder& o) { return o.levels[o.used - 1].value; };
  // whether some score in [lo, hi] could still be a level of an order being built (levels only
  // get better as groups are placed)
  auto reachable = [&](float lo, float hi) {
    if (use_pos && (pos.used < pos.limit || hi >= last(pos))) return true;
    if (!(lo < fp.upper)) return false;
    if (use_above && hi >= fp.threshold && (above.used < above.limit || lo <= last(above))) return true;
    if (use_below && lo < fp.threshold && (below.used < below.limit || hi >= last(below))) return true;
    return use_hard && (hard.used < hard.limit || lo <= last(hard));
  };
  const MaskPlan& plan = *row.plan;
  for (const auto& [g, s] : plan.other) place(s, [&](Level& l) { l.groups.push_back(g); });
  // the groups that score 0 share one level (placed once, not once per group)
  if (!plan.zero.empty())
    place(0.0f, [&](Level& l) { l.groups.insert(l.groups.end(), plan.zero.begin(), plan.zero.end()); });
  auto score = [&](const MaskPlan::Pending& pg) {
    score_group(one, gv, p, 0, pg.g, row.member_score.data());
    const int64_t start = gv.start[pg.g];
    for (int64_t k = start; k < gv.start[pg.g + 1]; ++k) {
      const int64_t v = gv.order[k];
      place(row.member_score[k - start], [&](Level& l) { l.records.push_back(v); });
    }
  };
  // Two passes, so that the levels settle after few groups and the rest are skipped: the best
  // ranges first until no other group can reach a positive level, then the rest nearest to the
  // threshold first, where the negative levels lie.
  size_t first = 0;
  if (use_pos)
    for (; first < plan.pending.size(); ++first) {
      const MaskPlan::Pending& pg = plan.pending[first];
      if (pos.used == pos.limit && pg.hi < last(pos)) break;
      score(pg);
    }
  if ((use_above || use_below || use_hard) && first < plan.pending.size()) {
    // the groups whose range holds the threshold, then the others (no sort needed: by then the
    // negative levels sit next to the threshold and few other groups reach them)
    const float t = fp.threshold;
    for (int straddle = 1; straddle >= 0; --straddle)
      for (size_t i = first; i < plan.pending.size(); ++i) {
        const MaskPlan::Pending& pg = plan.pending[i];
        if ((pg.lo <= t && t <= pg.hi) == static_cast<bool>(straddle) && reachable(pg.lo, pg.hi)) score(pg);
      }
  }
  for (int o = 0; o < 4; ++o) {
    if (!(active & (1u << o))) continue;
    LevelOrder* order = orders[o];
    for (size_t i = 0; i < order->used; ++i) {
      Level& l = order->levels[i];
      for (int64_t g : l.groups) {
        l.record_count += groups.size(g);
        l.samples += groups.samples[g];
        order->group_tag[g] = static_cast<int32_t>(i);
      }
      for (int64_t v : l.records) {
        ++l.record_count;
        l.samples += c.count(v);
        order->record_tag[v] = static_cast<int32_t>(i);
      }
    }
  }
}

void clear_tags(std::vector<LevelOrder*>& orders) {
  for (LevelOrder* o : orders)
    for (size_t i = 0; i < o->used; ++i) {
      const Level& l = o->levels[i];
      for (int64_t g : l.groups) o->group_tag[g] = -1;
      for (int64_t v : l.records) o->record_tag[v] = -1;
    }
}

// Takes up to `want` usable samples of one order's levels for one anchor; `taken` holds the
// samples already chosen (positives), which a negative must not repeat.
void take(LevelOrder& order, const CandidateOrders& c, const Groups& groups, const Row& row,
          int64_t anchor_id, uint32_t h, int64_t group, int64_t want, float floor, bool use_floor,
          const std::vector<int64_t>& taken, std::vector<int64_t>& out, std::vector<float>& out_score,
          int walk_mode) {
  for (size_t i = 0; i < order.used && static_cast<int64_t>(out.size()) < want; ++i) {
    Level& level = order.levels[i];
    if (use_floor && !(level.value >= floor)) return;
    LevelWalk walk(c, groups, order, row, level, static_cast<int>(i), h, group, walk_mode);
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
  const FoldedParams fp{k, static_cast<float>(threshold), static_cast<float>(upper),
                        static_cast<float>(min_positive_score), read_tie_seed(tie_seed_tensor),
                        walk_mode_from_env()};

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
  std::vector<int64_t> a_start;
  const std::vector<int64_t> a_list = stable_buckets(a_rec, n, records_a, a_start);
  const int64_t* ids = aid.data_ptr<int64_t>();
  const bool* semi_p = semi.data_ptr<bool>();
  int64_t* pos_out = positive.data_ptr<int64_t>();
  int64_t* neg_out = negatives ? negative.data_ptr<int64_t>() : nullptr;
  float* pos_s = pos_score.data_ptr<float>();
  float* neg_s = negatives ? neg_score.data_ptr<float>() : nullptr;
  const auto score_group = hot_loops().score_group;
  const auto* b_dis_p = reinterpret_cast<const uint32_t*>(bd.data_ptr<int32_t>());
  const auto* b_adj_p = reinterpret_cast<const uint32_t*>(ba.data_ptr<int32_t>());
  const auto* b_dir_p = reinterpret_cast<const uint32_t*>(br.data_ptr<int32_t>());
  const ScoreWeights weights{w_dis, w_adj, w_dir};
  const Groups groups(grouping.view, cands);
  const int64_t n_groups = grouping.view.groups;
  int64_t largest_group = 0;
  for (int64_t g = 0; g < n_groups; ++g) largest_group = std::max(largest_group, groups.size(g));

  // Work units: an anchor record and up to kChunk of its samples (a record held by most of the
  // collection, e.g. the no-finding one, is split so that it does not keep one thread busy alone;
  // each chunk recomputes the record's levels, which costs far less than its samples' walks).
  // Threads take units from a shared counter: their costs vary widely.
  constexpr int64_t kChunk = 2048;
  std::vector<std::pair<int64_t, int64_t>> units;  // (record, first sample position)
  std::vector<int64_t> by_mask(records_a);   // records sorted by disease mask: see MaskPlan
  for (int64_t u = 0; u < records_a; ++u) by_mask[u] = u;
  const uint32_t* a_mask = anchors.dis;
  std::stable_sort(by_mask.begin(), by_mask.end(), [&](int64_t x, int64_t y) {
    return (a_mask[x] & anchors.classes_mask) < (a_mask[y] & anchors.classes_mask);
  });
  for (int64_t u : by_mask)
    for (int64_t t = a_start[u]; t < a_start[u + 1]; t += kChunk) units.emplace_back(u, t);
  std::atomic<size_t> next_unit{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    Row row;
    MaskPlan plan;   // of the last mask seen: units come sorted by mask
    row.plan = &plan;
    row.member_score.resize(largest_group);
    std::vector<LevelOrder> order_store;
    for (int o = 0; o < 4; ++o)   // positives (descending), above (ascending), below (descending), hard (ascending)
      order_store.push_back(LevelOrder{o == 0 || o == 2, 1, {}, 0, std::vector<int32_t>(n_groups, -1),
                                       std::vector<int32_t>(records_b, -1)});
    std::vector<LevelOrder*> orders{&order_store[0], &order_store[1], &order_store[2], &order_store[3]};
    std::vector<std::pair<int64_t, int64_t>> same;
    std::vector<int64_t> pos_pick, neg_pick;
    const std::vector<int64_t> no_samples;
    std::vector<float> pos_val, neg_val;
    std::vector<int64_t> short_of_below;   // anchor samples whose negatives need the levels below
    for (size_t unit = next_unit++; unit < units.size(); unit = next_unit++) {
      const int64_t u = units[unit].first;
      const int64_t first = units[unit].second, stop = std::min(a_start[u + 1], first + kChunk);
      const int64_t group = stop - first;
      cpu::Anchors one = anchors;  // a view of record u alone
      one.dis += u;
      one.adj += u * anchors.adj_stride;
      one.dir += u * anchors.dir_stride;
      const uint32_t mu = one.dis[0] & one.classes_mask;
      if (!plan.ready || plan.mask != mu) plan.build(mu, grouping.view, p);
      // Levels per order: K positives need K usable levels, plus one for each record that is
      // unusable to a sample (all its samples carry the sample's id: E, the slack). The
      // negatives need as many usable levels as positives, plus one for each positive that
      // scores below `upper` (it may use up a level of theirs) and each such record scoring
      // below `upper`. So the positives are walked first and the negative levels built after.
      int64_t slack = 0, slack_below_upper = 0;
      bool want_semi = false, want_hard = false;
      const SampleView anchor_view{mu, one.adj, one.dir};
      for (int64_t t = first; t < stop; ++t) {
        const int64_t i = a_list[t];
        (semi_p[i] ? want_semi : want_hard) = true;
        cands.same_id_records(ids[i], same);
        int64_t gone = 0, gone_below = 0;
        for (const auto& [v, cnt] : same) {
          if (cnt != cands.count(v)) continue;
          ++gone;
          const SampleView rec{static_cast<uint32_t>(b_dis_p[v]) & anchors.classes_mask,
                               b_adj_p + v * anchors.adj_stride, b_dir_p + v * anchors.dir_stride};
          gone_below += pair_score(anchor_view, rec, p.wa, p.wr, weights, DivideQuotient{}) < fp.upper;
        }
        slack = std::max(slack, gone);
        slack_below_upper = std::max(slack_below_upper, gone_below);
      }
      build_levels(one, grouping.view, p, score_group, groups, cands, fp, kPos,
                   static_cast<size_t>(k + slack), 0, row, orders);
      for (LevelOrder* o : {orders[1], orders[2], orders[3]}) o->reset(0);
      int64_t low_positives = 0;   // the most positives of one sample that score below `upper`
      for (int64_t t = first; t < stop; ++t) {
        const int64_t i = a_list[t];
        const uint32_t h = fp.seed ? sample_tie_hash(*fp.seed, ids[i]) : 0u;
        pos_pick.clear(); pos_val.clear();
        take(*orders[0], cands, groups, row, ids[i], h, group, k, fp.min_positive,
             fp.min_positive > 0.0f, no_samples, pos_pick, pos_val, fp.walk);
        int64_t low = 0;
        for (size_t s = 0; s < pos_pick.size(); ++s) {
          pos_out[i * k + s] = pos_pick[s];
          pos_s[i * k + s] = pos_val[s];
          low += pos_val[s] < fp.upper;
        }
        low_positives = std::max(low_positives, low);
      }
      if (negatives) {
        const size_t neg_limit = static_cast<size_t>(k + low_positives + slack_below_upper);
        // the levels below the threshold (the semi-hard rule's fallback) are built only when an
        // anchor sample runs out of levels above it, which is rare in a large collection
        const unsigned active = (want_semi ? kAbove : 0u) | (want_hard ? kHard : 0u);
        build_levels(one, grouping.view, p, score_group, groups, cands, fp, active, 0, neg_limit, row, orders);
        short_of_below.clear();
        auto negatives_of = [&](int64_t i, bool with_below) {
          const uint32_t h = fp.seed ? sample_tie_hash(*fp.seed, ids[i]) : 0u;
          pos_pick.clear();
          for (int64_t s = 0; s < k && pos_out[i * k + s] >= 0; ++s) pos_pick.push_back(pos_out[i * k + s]);
          if (pos_pick.empty()) return true;
          neg_pick.clear(); neg_val.clear();
          const int64_t want = static_cast<int64_t>(pos_pick.size());
          if (semi_p[i]) {
            take(*orders[1], cands, groups, row, ids[i], h, group, want, 0.0f, false, pos_pick, neg_pick,
                 neg_val, fp.walk);
            if (static_cast<int64_t>(neg_pick.size()) < want && !with_below) return false;
            take(*orders[2], cands, groups, row, ids[i], h, group, want, 0.0f, false, pos_pick, neg_pick,
                 neg_val, fp.walk);
          } else {
            take(*orders[3], cands, groups, row, ids[i], h, group, want, 0.0f, false, pos_pick, neg_pick,
                 neg_val, fp.walk);
          }
          for (size_t s = 0; s < neg_pick.size(); ++s) {
            neg_out[i * k + s] = neg_pick[s];
            neg_s[i * k + s] = neg_val[s];
          }
          return true;
        };
        for (int64_t t = first; t < stop; ++t)
          if (!negatives_of(a_list[t], false)) short_of_below.push_back(a_list[t]);
        if (!short_of_below.empty()) {
          build_levels(one, grouping.view, p, score_group, groups, cands, fp, kBelow, 0, neg_limit, row,
                       orders);
          for (const int64_t i : short_of_below) negatives_of(i, true);
        }
      }
      clear_tags(orders);
    }
  });
  return {positive, negative, pos_score, neg_score};
}

}  // namespace medtrim
