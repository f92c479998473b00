"""Line texts for synthetic OCR data: Chinese and English phrases, dates, prices, digits, mixed lines.

Every choice comes from the `random.Random` handed in, so a seeded caller stays deterministic.
"""
from __future__ import annotations

import random

from ppdeploy.core.errors import PPDeployError
from ppdeploy.source.zoo import ocr_dictionary

CHINESE_PHRASES = [
    "发票代码", "发票号码", "开票日期", "校验码", "购买方名称", "纳税人识别号", "地址电话", "开户行及账号",
    "货物或应税劳务名称", "规格型号", "单位", "数量", "单价", "金额", "税率", "税额", "价税合计", "销售方",
    "收款人", "复核", "开票人", "备注", "欢迎光临", "谢谢惠顾", "请妥善保管小票", "会员积分", "实收现金",
    "找零", "合计金额", "优惠券抵扣", "北京市朝阳区建国路八十八号", "上海市浦东新区世纪大道", "广州市天河区体育西路",
    "深圳市南山区科技园", "杭州市西湖区文三路", "成都市高新区天府大道", "会议通知", "各部门负责人",
    "请于本周五下午三点", "在三楼会议室召开工作会议", "讨论年度预算安排", "请准时参加", "办公室", "人力资源部",
    "产品说明书", "使用前请仔细阅读本说明", "储存条件", "阴凉干燥处", "有效期至", "生产日期", "保质期",
    "净含量", "配料表", "营养成分表", "能量", "蛋白质", "脂肪", "碳水化合物", "钠", "联系电话", "客服热线",
    "中华人民共和国", "国家统计局", "经济增长", "科学技术", "人工智能", "深度学习", "文字识别", "图像处理",
    "飞桨开源框架", "模型部署", "推理引擎", "高性能计算", "数据中心", "云计算服务", "订单编号", "收货地址",
    "快递单号", "签收人", "配送时间", "商品名称", "苹果", "香蕉", "牛奶", "面包", "鸡蛋", "大米", "食用油",
]
ENGLISH_PHRASES = [
    "Invoice", "Total Amount", "Subtotal", "Tax", "Thank you for your purchase", "Customer Service",
    "Order Number", "Shipping Address", "Payment Method", "Credit Card", "Cash", "Change", "Quantity",
    "Unit Price", "Description", "Date", "Time", "Receipt", "Store", "Manager", "Meeting Notice",
    "Please arrive on time", "Room", "Floor", "Building", "Street", "Road", "Avenue", "Phone", "Email",
    "Deep learning inference", "Text recognition", "Model deployment", "Open source", "Version",
    "Battery life", "Made in China", "Best before", "Net weight", "Ingredients", "Warning",
]
UNITS = ["元", "件", "个", "箱", "kg", "g", "ml", "pcs"]


def date(rng: random.Random) -> str:
    y, m, d = rng.randint(2015, 2026), rng.randint(1, 12), rng.randint(1, 28)
    style = rng.randrange(4)
    if style == 0:
        return f"{y}年{m}月{d}日"
    if style == 1:
        return f"{y}-{m:02d}-{d:02d}"
    if style == 2:
        return f"{y}/{m:02d}/{d:02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
    return f"{d:02d}.{m:02d}.{y}"


def price(rng: random.Random) -> str:
    value = rng.choice([rng.randint(1, 99), rng.randint(100, 9999)]) + rng.randint(0, 99) / 100
    return rng.choice(["¥{:.2f}", "￥{:.2f}", "${:.2f}", "{:.2f}元", "RMB {:,.2f}"]).format(value)


def digits(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(8, 20)))
    if kind == 1:
        return f"{rng.choice(['138', '139', '150', '186', '010', '021'])}-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
    return f"No.{rng.randint(10000, 99999999)}"


def make_line(rng: random.Random) -> tuple[str, bool]:
    """One line of text and whether it is mainly Chinese."""
    kind = rng.randrange(7)
    if kind == 0:
        return "".join(rng.sample(CHINESE_PHRASES, rng.randint(1, 3))), True
    if kind == 1:
        return f"{rng.choice(CHINESE_PHRASES)}：{rng.choice([date(rng), price(rng), digits(rng)])}", True
    if kind == 2:
        return " ".join(rng.sample(ENGLISH_PHRASES, rng.randint(1, 3))), False
    if kind == 3:
        return f"{rng.choice(ENGLISH_PHRASES)}: {rng.choice([date(rng), price(rng), digits(rng)])}", False
    if kind == 4:
        return f"{rng.choice(CHINESE_PHRASES)} {rng.randint(1, 50)}{rng.choice(UNITS)} {price(rng)}", True
    if kind == 5:
        return rng.choice([date(rng), price(rng), digits(rng)]), False
    return f"{rng.choice(CHINESE_PHRASES)}{rng.choice(ENGLISH_PHRASES)}{rng.randint(1, 999)}", True



def allowed_characters() -> set[str] | None:
    """The recognizer dictionary's characters plus space (None when the dictionary is not available), so
    labels only hold characters the model can produce."""
    try:
        return set(ocr_dictionary().read_text(encoding="utf-8").splitlines()) | {" "}
    except PPDeployError:
        return None


def keep_allowed(text: str, allowed: set[str] | None) -> str:
    if allowed is not None:
        text = "".join(ch for ch in text if ch in allowed)
    return text.strip()


def needs_cjk(text: str) -> bool:
    """Whether a line needs a CJK font: Chinese, dates with 年, the full-width ￥, CJK punctuation."""
    return any(ord(ch) > 0x2000 for ch in text)
