#pragma once
// A sweep's heatmap as a PNG, drawn without a plotting library: one coloured cell per (row,
// column) with its value printed inside, row and column labels, a title, the best cell framed.
#include <filesystem>
#include <string>
#include <vector>

namespace diffprobe::detail {

struct Heatmap {
  std::string title;                    // e.g. "top-1 % avg:2 ridge"
  std::string row_axis, column_axis;    // "t", "block"
  std::vector<std::string> row_labels;  // one per row
  std::vector<std::string> column_labels;
  std::vector<std::vector<double>> values;  // [row][column]; NaN: not computed (drawn grey)
  int best_row = -1, best_column = -1;      // framed when >= 0
};

/// Values are printed as percentages with one decimal (0.8585 -> "85.9"); colours span the
/// grid's own range (viridis). IoError when the file cannot be written.
void write_heatmap_png(const std::filesystem::path& path, const Heatmap& map);

}  // namespace diffprobe::detail
